/* The models a run needs, built from its config: the teacher (an HF folder or a random inline
 * arch, or none), and the student (the same, converted to MLA in-process when student.mla says). */
#pragma once

#include "core/backend.h"
#include "model/convert.h"
#include "model/model.h"
#include "train/config.h"

/* The teacher, or *out = NULL when the config has none. */
Status build_teacher(const Config *cfg, Backend *be, int64_t max_seq, Model **out);

/* student.init_from as it is (GQA, or an exported MLA student). */
Status load_student_source(const Config *cfg, Backend *be, int64_t max_seq, Model **out);

/* The conversion options student.mla describes (calibration tokens not included). */
ConvertOptions convert_options_from_config(const Config *cfg);

/* The student: student.init_from, converted when student.mla is given and the source is a GQA model.
 * When a conversion runs, *report (if not NULL) receives its report and *converted is set. */
Status build_student(const Config *cfg, Backend *be, int64_t max_seq, Model **out, ConvertReport *report,
                     int *converted);
