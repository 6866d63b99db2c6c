"""``python -m cmrseg.pipelines.train_worker CONFIG.yaml DATA OUT``: one training run in its
own process, for :class:`cmrseg.pipelines.scheduler.Subprocess`."""

from __future__ import annotations

import sys

from cmrseg.errors import CmrsegError
from cmrseg.training.config import load_config
from cmrseg.training.trainer import train


def main(argv: list[str]) -> int:
    config, data, out = argv
    try:
        train(load_config(config), data, out)
    except CmrsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
