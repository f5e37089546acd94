from cyclepose_deploy.cli import main

main()
