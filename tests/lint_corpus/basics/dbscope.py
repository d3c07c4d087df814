"""Binds the processor once; apps import it by name."""
from webpy_txscope import txscope

load_sqlo = txscope("sqlite:/:memory:")
