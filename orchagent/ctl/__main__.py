from orchagent.ctl.cli import main

main()
