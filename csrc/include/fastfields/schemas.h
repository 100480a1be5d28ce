// The schema of every compiled kernel, written once.
//
// The CPU extension (library fastfields_cpu) and the CUDA one (fastfields_cuda) define the
// same ops from these strings, so the two bindings of a kernel cannot drift apart. Every
// kernel follows one launcher convention, shared with the Triton launchers of
// fastfields/kernels/ (see fastfields/_op.py): ``<op>_fwd`` and ``<op>_bwd`` take the
// tensors and the integer option codes of fastfields/enums.h (generated from
// fastfields/_enums.py), check their arguments naming the offending one, and return new
// tensors (accumulation-dtype gradients where documented).
//
// A binding file registers its two kernels with one line, e.g.
//
//   FF_REGISTER_KERNELS(fastfields_cpu, CPU, triplane_sample, fastfields::triplane_sample_fwd_cpu,
//                       fastfields::triplane_sample_bwd_cpu)
//
// TORCH-SIDE ONLY (FF_REGISTER_KERNELS needs torch/library.h): never include from a .cu file.
#pragma once

#include <torch/library.h>

#define FF_SCHEMA_triplane_sample_fwd \
  "triplane_sample_fwd(Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, int padding) -> Tensor"
#define FF_SCHEMA_triplane_sample_bwd                                                                    \
  "triplane_sample_bwd(Tensor grad_out, Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, " \
  "int padding, bool need_planes, bool need_xyz) -> (Tensor, Tensor)"

#define FF_SCHEMA_voxel_sample_fwd \
  "voxel_sample_fwd(Tensor volume, Tensor xyz, bool align_corners, int padding) -> Tensor"
#define FF_SCHEMA_voxel_sample_bwd                                                    \
  "voxel_sample_bwd(Tensor grad_out, Tensor volume, Tensor xyz, bool align_corners, int padding, " \
  "bool need_volume, bool need_xyz) -> (Tensor, Tensor)"

#define FF_SCHEMA_tensorf_vm_sample_fwd                                                                       \
  "tensorf_vm_sample_fwd(Tensor[] planes, Tensor[] lines, Tensor xyz, int[] mat_mode, int[] vec_mode, int reduce, " \
  "bool align_corners, int padding) -> Tensor"
#define FF_SCHEMA_tensorf_vm_sample_bwd                                                             \
  "tensorf_vm_sample_bwd(Tensor grad_out, Tensor[] planes, Tensor[] lines, Tensor xyz, int[] mat_mode, "   \
  "int[] vec_mode, int reduce, bool align_corners, int padding, bool need_planes, bool need_lines, " \
  "bool need_xyz) -> Tensor[]"

#define FF_SCHEMA_composite_fwd                                                                                 \
  "composite_fwd(Tensor sigmas, Tensor rgbs, Tensor? a, Tensor? b, Tensor? offsets, int geometry, int activation, " \
  "float bias, float scale, float eps, float t_threshold, bool return_weights) -> (Tensor, Tensor, Tensor, Tensor)"
#define FF_SCHEMA_composite_bwd                                                                                  \
  "composite_bwd(Tensor grad_rgb, Tensor? grad_depth, Tensor grad_opacity, Tensor? grad_weights, Tensor total, "    \
  "Tensor sigmas, Tensor rgbs, Tensor? a, Tensor? b, Tensor? offsets, int geometry, int activation, float bias, " \
  "float scale, float eps, bool need_sigmas, bool need_rgbs, bool need_a, bool need_b) "                        \
  "-> (Tensor, Tensor, Tensor, Tensor)"
// CPU only: the ray offsets of sorted ray_indices and the first out-of-order index (-1 if none).
#define FF_SCHEMA_composite_offsets "composite_offsets(Tensor ray_indices, int n_rays) -> (Tensor, int)"

#define FF_SCHEMA_adaln_modulate_fwd                                                                      \
  "adaln_modulate_fwd(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, Tensor? gate, " \
  "Tensor? residual, float eps) -> (Tensor, Tensor, Tensor)"
#define FF_SCHEMA_adaln_modulate_bwd                                                                       \
  "adaln_modulate_bwd(Tensor grad_out, Tensor x, Tensor scale, Tensor? weight, Tensor? gate, Tensor mean, " \
  "Tensor rstd) -> (Tensor, Tensor, Tensor)"

#define FF_SCHEMA_render_triplane_fwd                                                                              \
  "render_triplane_fwd(Tensor planes, Tensor rays_o, Tensor rays_d, Tensor t, Tensor? deltas, Tensor first_w, "    \
  "Tensor first_b, Tensor hidden_w, Tensor hidden_b, Tensor last_w, Tensor last_b, int[] axes, int reduce, "       \
  "bool align_corners, int padding, float scale, int activation, int color_act, int mode, "                       \
  "int density_activation, float density_bias, float distance_scale, bool mask_outside, float t_threshold, "     \
  "bool return_weights) -> (Tensor, Tensor, Tensor, Tensor)"
#define FF_SCHEMA_render_triplane_bwd                                                                              \
  "render_triplane_bwd(Tensor grad_rgb, Tensor grad_depth, Tensor grad_opacity, Tensor total, Tensor planes, "     \
  "Tensor rays_o, Tensor rays_d, Tensor t, Tensor? deltas, Tensor first_w, Tensor first_b, Tensor hidden_w, "      \
  "Tensor hidden_b, Tensor last_w, Tensor last_b, int[] axes, int reduce, bool align_corners, int padding, "       \
  "float scale, int activation, int color_act, int mode, int density_activation, float density_bias, "            \
  "float distance_scale, bool mask_outside, float t_threshold, bool return_weights) "                             \
  "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"

// Defines OP_fwd and OP_bwd (schemas above) in library NS and registers FWD and BWD as
// their kernels for dispatch key KEY (CPU or CUDA).
#define FF_REGISTER_KERNELS(NS, KEY, OP, FWD, BWD) \
  TORCH_LIBRARY_FRAGMENT(NS, m) {                  \
    m.def(FF_SCHEMA_##OP##_fwd);                   \
    m.def(FF_SCHEMA_##OP##_bwd);                   \
  }                                                \
  TORCH_LIBRARY_IMPL(NS, KEY, m) {                 \
    m.impl(#OP "_fwd", TORCH_FN(FWD));             \
    m.impl(#OP "_bwd", TORCH_FN(BWD));             \
  }
