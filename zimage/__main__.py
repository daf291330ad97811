"""`zimage` / `python -m zimage`: command line entry point.

`zimage info` prints what this build can do (CUDA compiled in, GPUs visible). Image
generation from the command line arrives with the pipeline.
"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="zimage", description="Z-Image-Turbo in C and CUDA")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="print build and device information")
    args = parser.parse_args(argv)
    import zimage

    if args.command in (None, "info"):
        print(f"zimage {zimage.__version__}")
        print(f"CUDA backend compiled in: {'yes' if zimage.cuda_compiled() else 'no'}")
        print(f"CUDA devices visible: {zimage.cuda_device_count()}")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
