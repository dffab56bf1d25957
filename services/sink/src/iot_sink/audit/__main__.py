import sys

from iot_sink.audit import main

sys.exit(main())
