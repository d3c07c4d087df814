"""The same helper, called only when the module runs as a script."""
import web

from lib.model_setup import setup
from webpy_txscope import txscope

app = web.application(("/", "Index"), globals())
app.add_processor(txscope("sqlite:/:memory:"))


def main():
    setup("sqlite:/:memory:")


if __name__ == "__main__":
    setup("sqlite:/:memory:")
    main()
