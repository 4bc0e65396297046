from charlab.cli import main

main()
