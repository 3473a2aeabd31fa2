from gossiplearn.cli.main import main

main()
