from microal.cli.main import run

run()
