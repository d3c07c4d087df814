"""web.py with SQLAlchemy: no SQLObject, but the same commit bugs.

Modelled on caiges/webpy-skeleton go.py (load_sqla).
"""
import web
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

engine = create_engine("sqlite://")


def load_sqla(handler):
    web.ctx.orm = scoped_session(sessionmaker(bind=engine))
    try:
        return handler()
    except web.HTTPError:
        web.ctx.orm.commit()  # expect: TXS104
        raise
    except:  # noqa: E722
        web.ctx.orm.rollback()
        raise
    finally:
        web.ctx.orm.commit()


urls = ("/(.*)", "Home")
app = web.application(urls, globals(), autoreload=False)
app.add_processor(load_sqla)
