.PHONY: demo test stack-up stack-down
demo:        ## the real flow on the local stack: signed publish, run, a measured swap, a refused release, status, rollback
	bash scripts/demo.sh
test:        ## every test: lints, unit and integration tests against the local stack
	bash scripts/test.sh
stack-up:
	bash scripts/stack-up.sh
stack-down:
	bash scripts/stack-down.sh
