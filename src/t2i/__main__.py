"""`python -m t2i ...` runs the `t2i` command line, so `torchrun -m t2i train unet ...` works."""

from t2i.cli import entry

if __name__ == "__main__":
    entry()
