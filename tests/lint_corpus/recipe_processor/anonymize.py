"""A batch script: its own process, no web application imports it.

Modelled on Siceron/webTFEScheduler anonimization.py.
"""
from models import *

sqlhub.processConnection = connectionForURI("sqlite:scheduler.db")

for thesis in Thesis.select():
    thesis.title = "anonymous"
