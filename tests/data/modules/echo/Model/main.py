"""Write every argument as received, plus the environment facts a test checks."""

import json
import os
import sys

out = sys.argv[1]
pairs = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
with open(os.path.join(out, "args.json"), "w") as handle:
    json.dump(
        {
            "argv": sys.argv[2:],
            "args": pairs,
            "cwd": os.getcwd(),
            "task_id": os.environ.get("ORCHESTRA_TASK_ID"),
            "virtual_env": os.environ.get("VIRTUAL_ENV"),
            "executable": sys.executable,
            "env_keys": sorted(os.environ),
        },
        handle,
    )
print("echo done")
