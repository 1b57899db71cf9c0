/* A ModelConfig as mlatrain's own JSON, every field spelled out: how a checkpoint records the
 * architecture it holds, so a resumed run rebuilds the model without re-running a conversion. */
#pragma once

#include <cjson/cJSON.h>

#include "model/config.h"

cJSON *model_config_to_json(const ModelConfig *cfg);
/* Reads what model_config_to_json wrote; `where` starts the error messages. Validates. */
Status model_config_from_json(const cJSON *obj, const char *where, ModelConfig *cfg);
