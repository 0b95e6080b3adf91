# Appliance targets; included by the top-level Makefile (which defines `install`).
.PHONY: package deploy-test logs generate-api-key

# Build dist/iir_<version>_<arch>.deb.
package: install
	PYTHON=$(CURDIR)/.venv/bin/python packaging/build_deb.sh

# Install the package into a temporary root, run it as the unit would, smoke-test it, stop it.
deploy-test: install
	PYTHON=$(CURDIR)/.venv/bin/python packaging/deploy_test.sh

# Follow the service's logs (journal when present, else IIR_LOG_FILE / var/deploy-test.log).
logs:
	@packaging/logs.sh

# Print a new API key: make generate-api-key ARGS="--prefix myservice --count 2 --env"
generate-api-key:
	@python3 generate_api_key.py $(ARGS)
