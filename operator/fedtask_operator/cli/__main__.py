import sys

from fedtask_operator.cli import main

sys.exit(main())
