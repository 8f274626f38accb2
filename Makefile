# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export OPENBLAS_NUM_THREADS ?= 2
# PyTorch's CPU build: a plain `torch` requirement resolves to a CUDA build of several GB,
# so the CPU release is pinned (pip finds it in its configured wheel folders where the
# machine has them: this kind of machine keeps the CPU wheel in /opt/wheels). `make
# TORCH=torch` takes the newest release instead.
TORCH  := torch==2.13.0

.PHONY: demo test bench lint graphviz chromium clean

# setuptools reports that an install is editable with a warning (InformationOnly: "there is
# no clear way of displaying messages"); it is no fault of the project, so it is filtered.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[dev,examples,plots,jax,torch,cupy,distributed,browser]" $(TORCH)
	touch $(STAMP)

# The real `dot` program renders diagrams: install Debian's graphviz when missing.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing graphviz (dot) with apt-get"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "warning: Graphviz 'dot' is missing and cannot be installed here;"; \
	    echo "  install it with 'sudo apt-get install graphviz' (Debian/Ubuntu) or 'brew install graphviz' (macOS)."; \
	    echo "  Diagrams are still written as .dot files."; \
	  fi; }

# The report page's browser test drives Debian's chromium with its chromium-driver
# (Selenium, the browser extra): install them when missing. Nothing is downloaded
# otherwise; without them the test skips, saying why.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver with apt-get"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "warning: chromium or chromedriver is missing and cannot be installed here;"; \
	    echo "  install them with 'sudo apt-get install chromium chromium-driver' (Debian/Ubuntu)."; \
	    echo "  The report page's browser test is skipped without them."; \
	  fi; }

demo: $(STAMP) graphviz chromium
	$(PY) examples/demo.py
	@echo
	@echo "The symbackprop command is in $(VENV): run 'source $(VENV)/bin/activate' in a shell to"
	@echo "put it on the PATH (or call $(VENV)/bin/symbackprop), then 'symbackprop --help'."

# one pytest worker per core (pytest-xdist), each with one BLAS/OpenMP thread: the cores are
# the workers', not shared by threads that wait on each other
test: $(STAMP) graphviz chromium
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/mpi_scaling.py

lint: $(STAMP)
	$(VENV)/bin/ruff check symbackprop tests examples

clean:
	rm -rf $(VENV) out build *.egg-info
