"""``python -m ovms``: the same command line as the OpenVINO Model Server binary."""
from ovms.cli import main

if __name__ == "__main__":
    main()
