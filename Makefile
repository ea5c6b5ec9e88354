.PHONY: demo test stack-up stack-down
demo:        ## run blog-agent sync against the local stack (installs and starts it)
	bash scripts/demo.sh
test:        ## every test: lints, unit and integration tests against the local stack
	bash scripts/test.sh
stack-up:
	bash scripts/stack-up.sh
stack-down:
	bash scripts/stack-down.sh
