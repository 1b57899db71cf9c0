/* The export command: loads a student (a folder in mlatrain's export layout, as convert writes, or a
 * run's checkpoint) and writes it in DeepSeek-V2's HF layout with the requested dtype, shards and
 * rope policy. */
#include "train/cmd_export.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "model/hf/hf_model.h"
#include "train/models.h"
#include "train/tokenizer_files.h"

void cmd_export_usage(void) {
    printf("usage: mlatrain export --checkpoint PATH --out DIR [--dtype bf16|f16|f32] [--max-shard-gb N]\n"
           "                       [--allow-rebase]\n"
           "\n"
           "Writes the student at PATH to DIR in DeepSeek-V2's HF layout: config.json, model.safetensors\n"
           "(or shards and an index), lm_head even when tied, rope rows in DeepSeek's interleaved order.\n"
           "PATH is a folder that convert or a previous export wrote (run.dir/final too), a checkpoint\n"
           "folder (run.dir/checkpoints/step_N) or a run directory (its newest valid checkpoint).\n"
           "--allow-rebase exports rope frequencies DeepSeek's config cannot express by re-basing them\n"
           "(the model changes; said on stderr). Default dtype bf16, shards of 5 GB. config.json's\n"
           "torch_dtype names the dtype written. The tokenizer files (tokenizer.json, tokenizer_config.json,\n"
           "special_tokens_map.json, tokenizer.model, generation_config.json) are copied beside it: from\n"
           "PATH when it is a model folder, else from the folder the run started from (student.init_from,\n"
           "else teacher.path).\n");
}

Status cmd_export(int argc, char **argv, int *show_help) {
    const char *src = NULL, *out = NULL;
    ExportOptions eo = {.dtype = DT_BF16, .max_shard_bytes = (size_t)5 << 30, .allow_rebase = 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (strcmp(a, "--allow-rebase") == 0) {
            eo.allow_rebase = 1;
            continue;
        }
        if (i + 1 >= argc) return errorf("export: %s: unknown option or missing value (see mlatrain export --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--checkpoint") == 0) src = v;
        else if (strcmp(a, "--out") == 0) out = v;
        else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "bf16") == 0) eo.dtype = DT_BF16;
            else if (strcmp(v, "f16") == 0) eo.dtype = DT_F16;
            else if (strcmp(v, "f32") == 0) eo.dtype = DT_F32;
            else return errorf("export: --dtype: expected bf16, f16 or f32, got \"%s\"", v);
        } else if (strcmp(a, "--max-shard-gb") == 0) {
            char *end = NULL;
            errno = 0;
            double gb = strtod(v, &end);
            if (errno || end == v || *end || !(gb > 0) || gb > 1e6)
                return errorf("export: --max-shard-gb: expected a positive number, got \"%s\"", v);
            eo.max_shard_bytes = (size_t)(gb * (double)(1u << 30));
        } else {
            return errorf("export: unknown option %s (see mlatrain export --help)", a);
        }
    }
    if (!src) return errorf("export: --checkpoint PATH is required (see mlatrain export --help)");
    if (!out) return errorf("export: --out DIR is required (see mlatrain export --help)");
    if (strcmp(src, out) == 0) return errorf("export: --out must differ from --checkpoint (%s)", src);
    if (!is_checkpoint_path(src) && !is_model_folder(src)) return not_a_student_path("export: --checkpoint", src);

    Backend *be = NULL;
    BackendOptions bo = {0, 0};
    TRY(backend_create(&be, "cpu", bo));
    Model *m = NULL;
    /* Export reads no sequence, so the rope tables need one position only. */
    char ckpt_dir[4096] = "", tokenizer_from[4096] = "";
    int from_checkpoint = is_checkpoint_path(src), copied = 0;
    Status st = from_checkpoint ? load_student_checkpoint(src, be, 1, &m, ckpt_dir, sizeof ckpt_dir, NULL)
                                : hf_model_load(&m, be, src, 1);
    if (st != STATUS_OK) error_context("export: ");
    if (st == STATUS_OK && model_config_mla_layers(&m->cfg) == 0)
        st = errorf("export: %s is a GQA model (no MLA layer): export writes MLA students in DeepSeek-V2's layout; "
                    "`mlatrain convert` makes one from it", src);
    if (st == STATUS_OK && hf_model_export(m, out, &eo) != STATUS_OK) st = error_context("export to %s: ", out);
    if (st == STATUS_OK) {
        if (from_checkpoint) {
            st = tokenizer_files_copy_for_checkpoint(ckpt_dir, out, tokenizer_from, sizeof tokenizer_from, &copied);
        } else {
            snprintf(tokenizer_from, sizeof tokenizer_from, "%s", src);
            st = tokenizer_files_copy(src, out, &copied);
        }
        if (st != STATUS_OK) error_context("export: tokenizer files: ");
    }
    if (st == STATUS_OK) printf("wrote %s (%s)\n", out, dtype_name(eo.dtype));
    if (st == STATUS_OK && copied) printf("copied %d tokenizer files from %s\n", copied, tokenizer_from);
    model_destroy(m);
    backend_destroy(be);
    return st;
}
