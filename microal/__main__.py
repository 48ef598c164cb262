from microal.cli import run

run()
