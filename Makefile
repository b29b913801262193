# Pulse — see README.md. `make run` and `make test` are the two commands a newcomer needs.
GO        ?= go
BIN       ?= bin/pulse
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/pulse-bus/pulse/internal/app.Version=$(VERSION)
TESTFLAGS ?=
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
ACTIONLINT  := github.com/rhysd/actionlint/cmd/actionlint@v1.7.12

.PHONY: all build run test test-matrix bench bench-go lint fuzz demo clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/pulse

## run: the pipeline side on the embedded JetStream server (no set-up needed).
run: build
	./$(BIN) run

## demo: the whole feedback loop in one process, live in the terminal.
demo: build
	./$(BIN) demo --duration 20s --plot demo.svg

## test: every test of the module, with the race detector.
test:
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	cd bench && $(GO) test -count=1 ./...

## test-matrix: the CI matrix, schema track × backend: conformance suite, feedback package and
## the service's feedback tests, each cell on one track and one backend.
MATRIX_TRACKS   ?= v1 v2
MATRIX_BACKENDS ?= inmem redis jetstream
test-matrix:
	@set -e; for track in $(MATRIX_TRACKS); do for backend in $(MATRIX_BACKENDS); do \
	  echo "== matrix: backend=$$backend track=$$track"; \
	  PULSE_TEST_TRACK=$$track PULSE_TEST_BACKEND=$$backend $(GO) test -race -count=1 -run '^TestConformance(Cluster)?$$' ./transport/$$backend; \
	  PULSE_TEST_TRACK=$$track PULSE_TEST_BACKEND=$$backend $(GO) test -race -count=1 ./feedback/...; \
	  PULSE_TEST_TRACK=$$track PULSE_TEST_BACKEND=$$backend $(GO) test -race -count=1 -run '^(TestApp|TestPublishThenApply|TestDLQ|TestDemoSettles)' ./internal/app; \
	done; done

## bench: Pulse beside raw clients and Watermill, in one run (bench/ is its own module); the
## report also goes to bench/results/latest.txt. Pass flags with BENCHFLAGS, e.g.
## make bench BENCHFLAGS='-only redis -n 50000'   (see: cd bench && go run ./cmd/pulsebench -h)
BENCHFLAGS ?=
bench:
	cd bench && $(GO) run ./cmd/pulsebench $(BENCHFLAGS)

## bench-go: the same trials as testing.B benchmarks, plus the bench module's own tests.
bench-go:
	cd bench && $(GO) test -count=1 ./... && \
	  $(GO) test -run '^$$' -bench 'Inmem|Redis|JetStream/./(publish|consume)' -benchtime 20000x ./ && \
	  $(GO) test -run '^$$' -bench 'JetStream/./latency' -benchtime 2000x ./

## lint: formatting, vet, staticcheck, actionlint.
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd bench && $(GO) vet ./...
	$(GO) run $(ACTIONLINT)

## fuzz: a bounded fuzzing run of the envelope decoder.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./envelope

clean:
	rm -rf bin
