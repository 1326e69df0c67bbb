from saelens_amort.cli import main

main()
