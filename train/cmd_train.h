/* `mlatrain --config FILE [--set key.path=value ...]`: runs training as the config says. */
#pragma once

#include "core/status.h"

/* Exit status of a run stopped by SIGTERM or SIGUSR1 after writing its checkpoint. */
#define EXIT_PREEMPTED 3

/* *preempted is set when the run stopped on a signal (checkpoint written). */
Status cmd_train(int argc, char **argv, int *show_help, int *preempted);
void cmd_train_usage(void);
