import sys

from mailsvc.cli import main

sys.exit(main())
