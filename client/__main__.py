"""``python -m client``: parse the options (bad ones exit 2), then run on the reactor."""

import sys

from twisted.internet.task import react

from client.run import main, parse_args

if __name__ == "__main__":
    react(main, (parse_args(sys.argv[1:]),))
