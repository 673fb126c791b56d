from saedb.cli import app

app()
