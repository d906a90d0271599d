from lotdeploy.cli import main

main()
