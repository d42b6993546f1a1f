from cellmapseg.cli import main

main()
