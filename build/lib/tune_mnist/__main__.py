import sys

from tune_mnist.cli import main

sys.exit(main())
