"""web.py with SQLAlchemy and a correct processor.

Modelled on RicterZ/pyprint main.py and lib/functions.py (load_sqlalchemy).
"""
import web
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

engine = create_engine("sqlite://")


def load_sqlalchemy(handler):
    web.ctx.orm = scoped_session(sessionmaker(bind=engine))
    try:
        return handler()
    except web.HTTPError:
        if web.ctx.status.startswith("5"):
            web.ctx.orm.rollback()
        else:
            web.ctx.orm.commit()
        raise
    except Exception:
        web.ctx.orm.rollback()
        raise
    finally:
        web.ctx.orm.close()


def load_sqlalchemy_flagged(handler):
    session = scoped_session(sessionmaker(bind=engine))
    failed = True
    try:
        result = handler()
        failed = False
        return result
    finally:
        if failed:
            session.rollback()
        else:
            session.commit()
        session.close()


app = web.application(("/", "Index"), globals())
app.add_processor(load_sqlalchemy)
app.add_processor(load_sqlalchemy_flagged)
application = app.wsgifunc()
