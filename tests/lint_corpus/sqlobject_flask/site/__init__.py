"""A Flask application with SQLObject: not web.py, so not this lint's business.

Modelled on iguanaonmystack/kathymurdochhomepage.
"""
from flask import Flask

from .lib.model_setup import setup

app = Flask(__name__)
setup("sqlite:/:memory:")
