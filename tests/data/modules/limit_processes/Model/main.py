"""Fork children that sleep, without end; a failed fork ends this process with its error."""

import os
import time

while True:
    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
