# ngx_http_optout_module: see README.md.
#
#   make            module (build/ngx_http_optout_module.so) and optoutctl
#   make test       install what is missing, build, run prove -r t/
#   make run        install what is missing, build, start the quickstart
#   make fuzz       longer libFuzzer runs of the token decoder and normalizer
#   make bench      benchmarks in bench/
#   make deb        Debian packages in build/deb/ (libnginx-mod-http-optout,
#                   optoutctl)

CC        ?= cc
FUZZ_CC   ?= clang
CFLAGS    ?= -O2 -g
WARN      := -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu99
LIBS      := -lcrypto
BUILD     := build
NGINX_SRC ?= /usr/share/nginx/src
FUZZ_TIME ?= 300

CORE_SRCS := src/optout_normalize.c src/optout_token.c src/optout_crypto.c \
             src/optout_record.c
CORE_HDRS := src/optout_core.h
MC_SRCS   := src/optout_memcached.c src/optout_memcached.h
JNL_SRCS  := src/optout_journal.c src/optout_journal.h
FOLD_SRCS := src/optout_fold.c src/optout_fold.h
PIPE_SRCS := src/optout_pipe.c src/optout_pipe.h
KW_SRCS   := src/optout_keyword.c src/optout_keyword.h
WH_SRCS   := src/optout_webhook.c src/optout_webhook.h
IN_SRCS   := src/optout_inbound.c src/optout_inbound.h
MOD_SRCS  := $(wildcard src/ngx_http_optout_*.c src/ngx_http_optout_*.h) \
             $(MC_SRCS) $(JNL_SRCS) $(KW_SRCS) $(WH_SRCS) $(IN_SRCS)

.PHONY: all module tools deps test unit fuzz fuzz-short run bench deb clean
.PHONY: webhook-vectors

all: module tools

deps:
	@bash tools/deps.sh

module: $(BUILD)/ngx_http_optout_module.so

$(BUILD)/ngx_http_optout_module.so: config $(MOD_SRCS) $(CORE_SRCS) \
                                    $(CORE_HDRS) tools/build-module.sh
	@NGINX_SRC="$(NGINX_SRC)" bash tools/build-module.sh

tools: $(BUILD)/optoutctl $(BUILD)/test_core $(BUILD)/test_fold \
       $(BUILD)/test_keyword $(BUILD)/test_webhook $(BUILD)/test_inbound

$(BUILD)/optoutctl: tools/optoutctl.c $(CORE_SRCS) $(CORE_HDRS) $(MC_SRCS) \
                   $(JNL_SRCS) $(FOLD_SRCS) $(PIPE_SRCS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tools/optoutctl.c $(CORE_SRCS) \
	    src/optout_memcached.c src/optout_journal.c src/optout_fold.c \
	    src/optout_pipe.c $(LIBS) -lmemcached -ljansson -lcurl -lm

$(BUILD)/test_fold: tests/unit/test_fold.c tests/unit/tap.h $(CORE_SRCS) \
                    $(CORE_HDRS) \
                    $(JNL_SRCS) $(FOLD_SRCS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tests/unit/test_fold.c \
	    $(CORE_SRCS) src/optout_journal.c src/optout_fold.c \
	    $(LIBS) -ljansson -lm

$(BUILD)/test_core: tests/unit/test_core.c tests/unit/tap.h $(CORE_SRCS) \
                    $(CORE_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tests/unit/test_core.c \
	    $(CORE_SRCS) $(LIBS)

$(BUILD)/test_keyword: tests/unit/test_keyword.c tests/unit/tap.h $(KW_SRCS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tests/unit/test_keyword.c \
	    src/optout_keyword.c -lunistring

# a static rule: preferred over the pattern rule below
$(BUILD)/fuzz_keyword: fuzz/fuzz_keyword.c $(KW_SRCS)
	@mkdir -p $(BUILD)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -Isrc -o $@ $< src/optout_keyword.c \
	    -lunistring

$(BUILD)/test_webhook: tests/unit/test_webhook.c tests/unit/tap.h \
                       $(CORE_SRCS) $(CORE_HDRS) \
                       $(WH_SRCS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tests/unit/test_webhook.c \
	    $(CORE_SRCS) src/optout_webhook.c $(LIBS)

# regenerates tests/webhook-vectors.txt (needs python3-cryptography)
webhook-vectors:
	python3 tests/gen-webhook-vectors.py > tests/webhook-vectors.txt

$(BUILD)/fuzz_webhook: fuzz/fuzz_webhook.c $(CORE_SRCS) $(CORE_HDRS) \
                       $(WH_SRCS)
	@mkdir -p $(BUILD)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -Isrc -o $@ $< $(CORE_SRCS) \
	    src/optout_webhook.c $(LIBS)

$(BUILD)/test_inbound: tests/unit/test_inbound.c tests/unit/tap.h \
                       $(CORE_SRCS) $(CORE_HDRS) $(JNL_SRCS) $(WH_SRCS) \
                       $(IN_SRCS) src/optout_keyword.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ tests/unit/test_inbound.c \
	    $(CORE_SRCS) src/optout_journal.c src/optout_webhook.c \
	    src/optout_inbound.c $(LIBS) -ljansson -lunistring -lm

$(BUILD)/fuzz_inbound: fuzz/fuzz_inbound.c $(CORE_SRCS) $(CORE_HDRS) \
                       $(WH_SRCS) $(IN_SRCS) src/optout_keyword.h
	@mkdir -p $(BUILD)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -Isrc -o $@ $< $(CORE_SRCS) \
	    src/optout_webhook.c src/optout_inbound.c $(LIBS) -ljansson \
	    -lunistring

$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(CORE_SRCS) $(CORE_HDRS)
	@mkdir -p $(BUILD)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -Isrc -o $@ $< $(CORE_SRCS) $(LIBS)

unit: $(BUILD)/test_core $(BUILD)/test_fold $(BUILD)/test_keyword \
      $(BUILD)/test_webhook $(BUILD)/test_inbound
	$(BUILD)/test_core
	$(BUILD)/test_fold
	$(BUILD)/test_keyword
	$(BUILD)/test_webhook
	$(BUILD)/test_inbound

# short runs, part of make test (t/01-fuzz.t)
fuzz-short: $(BUILD)/fuzz_token $(BUILD)/fuzz_normalize $(BUILD)/fuzz_keyword \
            $(BUILD)/fuzz_webhook $(BUILD)/fuzz_inbound

fuzz: $(BUILD)/fuzz_token $(BUILD)/fuzz_normalize $(BUILD)/fuzz_keyword \
      $(BUILD)/fuzz_webhook $(BUILD)/fuzz_inbound
	@mkdir -p $(BUILD)/corpus-token $(BUILD)/corpus-normalize \
	    $(BUILD)/corpus-keyword $(BUILD)/corpus-webhook \
	    $(BUILD)/corpus-inbound
	$(BUILD)/fuzz_token -max_total_time=$(FUZZ_TIME) \
	    $(BUILD)/corpus-token fuzz/seeds/token
	$(BUILD)/fuzz_normalize -max_total_time=$(FUZZ_TIME) \
	    $(BUILD)/corpus-normalize fuzz/seeds/normalize
	$(BUILD)/fuzz_keyword -max_total_time=$(FUZZ_TIME) \
	    $(BUILD)/corpus-keyword fuzz/seeds/keyword
	$(BUILD)/fuzz_webhook -max_total_time=$(FUZZ_TIME) \
	    $(BUILD)/corpus-webhook fuzz/seeds/webhook
	$(BUILD)/fuzz_inbound -max_total_time=$(FUZZ_TIME) \
	    $(BUILD)/corpus-inbound fuzz/seeds/inbound

test: deps all fuzz-short
	prove -r t/

run: deps all
	@bash tools/run.sh

bench: deps all
	@bash bench/run-all.sh

# built from a copy of the tree in build/deb/src, see tools/build-deb.sh
deb: deps
	@bash tools/build-deb.sh

clean:
	rm -rf $(BUILD)
