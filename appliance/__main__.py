"""`python -m appliance` is the same as the `infraspectre` command."""

import sys

from appliance.cli import main

sys.exit(main())
