from ropenlp.cli import app

app(prog_name="ropenlp")
