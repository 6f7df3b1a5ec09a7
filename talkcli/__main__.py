from talkcli.entry import run

run()
