from talkcli.cli import main

main()
