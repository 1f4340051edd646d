import sys

from cimstack.cli import main

sys.exit(main())
