# The two commands a fresh machine needs:
#   make serve   set up and run the daemon with its embedded defaults (RAM tier, 127.0.0.1:7070)
#   make test    set up everything the tests use and run the whole suite
.PHONY: serve test proto bench

serve:
	scripts/setup.sh
	.venv/bin/kvbucket serve

test:
	scripts/setup.sh --dev
	.venv/bin/python proto/generate.py --check
	.venv/bin/python -m pytest tests

proto:
	.venv/bin/python proto/generate.py
