from mailward.cli import main

main()
