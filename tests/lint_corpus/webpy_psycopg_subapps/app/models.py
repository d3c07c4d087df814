import psycopg2

db = None
cursor = None


def connect():
    global db, cursor
    db = psycopg2.connect(database="mydb", user="postgres")
    cursor = db.cursor()


def insert(table, values):
    try:
        cursor.execute(f"INSERT INTO {table} VALUES (%s)", values)
        db.commit()
        return 0
    except Exception:
        db.rollback()
        return 1
