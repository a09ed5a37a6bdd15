"""Train a MiniMind model: the seed's train.py, on the minimind package. Same as `minimind train`.

    python train.py                      # pretrain with the seed's defaults on the built-in corpus
    python train.py --help               # every flag
"""

import sys

from minimind.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog="train.py")
