import sys

from cio_sync.cli.main import main

sys.exit(main())
