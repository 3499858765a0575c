# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean synth-weights synth-calibration sasha-lanes sasha-carry sasha-report

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wsigym demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# Re-train every model shipped in zoo/assets/weights/ on synth-c16 (CPU, about two hours on 2 cores).
# Short runs: 3 epochs (HAFED 12, TransMIL 1) at lr 1e-3 instead of the papers' ~50 at 1e-4
# (see each card). ABMIL, ACMIL, ASMIL and TransMIL read every high-res child (view=hr, ~18k per slide;
# ASMIL's queries start at std 1, see its card; TransMIL ~50 min per epoch on one CPU thread) and so does SemaMIL
# (numba scan, ~22 min per epoch on one thread): on synth-c16 the low-res patches carry no slide evidence
# (docs/synth-c16.md). LRMIL reads the low-res patches (distilled from the high-res ABMIL).
ZOO  := $(VENV)/bin/zoo
# SASHA's f_S (LayerNorm MLP) by SASHA's CAMELYON16 TSU recipe (config/camelyon_tsu_config.yml; 200 epochs
# as for SASHA-0.1); the same command is the tsu-synth-c16 card's reproduce line (zoo/pretrained.py).
TSU_TRAIN := $(ZOO) train tsu --dataset synth-c16 --hafed runs/hafed-synth-c16 --epochs 200 --lr 4e-5 \
	--weight-decay 4e-4 --config tau=0.95 similarity=abs_cosine anchors_per_slide=1
SYNTH := --dataset synth-c16 --epochs 3 --lr 1e-3
synth-weights: $(STAMP)
	$(ZOO) train hafed --dataset synth-c16 --epochs 12 --lr 1e-3 --out runs/hafed-synth-c16
	$(TSU_TRAIN) --out runs/tsu-synth-c16
	for m in abmil acmil; do \
		$(ZOO) train $$m $(SYNTH) --config view=hr --out runs/$$m-synth-c16 || exit 1; done
	$(ZOO) train asmil $(SYNTH) --config view=hr query_init_std=1.0 --out runs/asmil-synth-c16
	$(ZOO) train transmil --dataset synth-c16 --epochs 1 --lr 1e-3 --config view=hr --out runs/transmil-synth-c16
	$(ZOO) train semamil $(SYNTH) --config view=hr --out runs/semamil-synth-c16
	$(ZOO) train lrmil $(SYNTH) --teacher runs/abmil-synth-c16 --out runs/lrmil-synth-c16
	$(ZOO) train wisefuse $(SYNTH) --out runs/wisefuse-synth-c16
	$(ZOO) results $(foreach m,hafed abmil acmil transmil asmil semamil lrmil wisefuse,runs/$(m)-synth-c16) \
		--readme README.md

# The calibration reports shipped in wsigym/data/assets/ (docs/synth-c16.md). The incoherent variant is
# measured with a HAFED and f_S trained on it, by the same commands as the shipped ones.
WSIGYM := $(VENV)/bin/wsigym --threads 1
synth-calibration: $(STAMP)
	$(WSIGYM) synth calibrate --out wsigym/data/assets/synth-c16-calibration.json
	$(ZOO) train hafed --dataset synth-c16-incoherent --epochs 12 --lr 1e-3 --out runs/hafed-synth-c16-incoherent
	$(subst synth-c16,synth-c16-incoherent,$(TSU_TRAIN)) --out runs/tsu-synth-c16-incoherent
	$(WSIGYM) synth calibrate --variant synth-c16-incoherent --part state-update \
		--hafed runs/hafed-synth-c16-incoherent --tsu runs/tsu-synth-c16-incoherent \
		--out wsigym/data/assets/synth-c16-incoherent-calibration.json

# SASHA's experiment (wsigym/agents/reproduction.py, docs/sasha-reproduction.md): the main TSU rows at SASHA's
# scale and the update-rule ablation at one pass (the most a global-rule run fits into one 2.5-hour job on
# one core), 3 training seeds. Resumable: `make -j2 sasha-lanes` in every session (one lane per core); finished
# runs are skipped, interrupted ones continue from their checkpoint. Finished runs, and the latest checkpoint of
# unfinished ones, are also written to results/synth-c16/reproduce/: commit it, since a new machine has no runs/
# (it continues an unfinished run from there). `make sasha-carry` copies the checkpoints by hand.
SASHA_OUT := runs/sasha-synth-c16
SASHA_RUN := $(WSIGYM) reproduce run --ablation-passes 1 --out $(SASHA_OUT)
sasha-lanes: sasha-lane-main sasha-lane-ablation
sasha-lane-%: $(STAMP)
	mkdir -p $(SASHA_OUT)
	$(SASHA_RUN) --rows $* > $(SASHA_OUT)/lane-$*.log 2>&1
sasha-carry: $(STAMP)
	$(WSIGYM) reproduce carry --ablation-passes 1 --out $(SASHA_OUT)
sasha-report: $(STAMP)
	$(WSIGYM) reproduce report --ablation-passes 1 --out $(SASHA_OUT) --readme README.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
