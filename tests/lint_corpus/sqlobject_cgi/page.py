"""A CGI page: no web.py application anywhere."""
import cgi

from model import SessionInfo


def main():
    form = cgi.FieldStorage()
    info = SessionInfo.get(form.getvalue("id"))
    print("Content-Type: text/plain\n")
    print(info.ip_addr)


main()
