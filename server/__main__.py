"""`python -m kvbucket.server` is `kvbucket serve`."""

import sys

from kvbucket.clients.cli import app

if __name__ == "__main__":
    sys.argv.insert(1, "serve")
    app()
