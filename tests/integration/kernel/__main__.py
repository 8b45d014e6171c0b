import sys

from tests.integration.kernel.harness import main

sys.exit(main())
