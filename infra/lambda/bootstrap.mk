# What `sam build` runs for every function: `make build-<LogicalId>` with ARTIFACTS_DIR set,
# using the Makefile of the stack's Architecture (the template's functions name it with
# Metadata.ContextPath = lambda/${Architecture}; see functions/amiflow/src/infra.rs).
# All functions run the one `bootstrap`: build-bootstrap.sh builds it (cargo does nothing
# when it is up to date), checks its architecture and links it into ARTIFACTS_DIR.

LAMBDA_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

ifndef ARCHITECTURE
$(error ARCHITECTURE is not set: run make through infra/lambda/x86_64/Makefile or infra/lambda/arm64/Makefile)
endif

build-%:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set: sam build sets it" >&2; exit 1; }
	"$(LAMBDA_DIR)/build-bootstrap.sh" "$(ARCHITECTURE)" "$(ARTIFACTS_DIR)"
