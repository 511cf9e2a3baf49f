#include "tiles_common.h"

namespace omkit {

namespace {

KeptGeometry kept_geometry(const Tensor& tiles, int64_t D, int64_t H, int64_t W, c10::IntArrayRef keep_offset,
                           c10::IntArrayRef tile_keep, const char* op) {
  const auto ko = as_triple(keep_offset, op, "keep_offset");
  const auto ks = as_triple(tile_keep, op, "tile_keep");
  return {tiles.size(0), tiles.size(2), tiles.size(3), tiles.size(4), D, H, W, {ko[0], ko[1], ko[2]},
          {ks[0], ks[1], ks[2]}};
}

}  // namespace

namespace impl {

Tensor gather_tiles(const TileKernels& kernels, const Tensor& volume, const Tensor& origins,
                    c10::IntArrayRef tile_size) {
  const char* op = "gather_tiles";
  check_gather_args(volume, op);
  const auto roi = checked_tile_size(tile_size, op);
  Tensor O = checked_origins(origins, -1, volume.device(), op);
  Tensor V = volume.contiguous();
  Tensor tiles = at::empty({O.size(0), V.size(0), roi[0], roi[1], roi[2]}, V.options());
  if (tiles.numel() > 0) kernels.gather(V, O, tiles);
  return tiles;
}

void stitch_tiles_(const TileKernels& kernels, const Tensor& out, const Tensor& tiles_in, const Tensor& origins,
                   c10::IntArrayRef keep_offset, c10::IntArrayRef tile_keep) {
  const char* op = "stitch_tiles_";
  check_stitch_args(out, 4, tiles_in, out.dim() == 4 ? out.size(0) : -1, keep_offset, tile_keep, op);
  Tensor O = checked_origins(origins, tiles_in.size(0), out.device(), op);
  // Tiles are cast to the output's dtype (as the reference does); the volume is never copied
  // unless it is not contiguous.
  Tensor tiles = tiles_in.to(out.scalar_type()).contiguous();
  Tensor target = out.is_contiguous() ? out : out.contiguous();
  const KeptGeometry g =
      kept_geometry(tiles, target.size(1), target.size(2), target.size(3), keep_offset, tile_keep, op);
  if (g.T > 0 && g.D > 0 && tiles.size(1) > 0) kernels.stitch(target, tiles, O, g);
  if (!target.is_same(out)) out.copy_(target);
}

void stitch_tiles_argmax_(const TileKernels& kernels, const Tensor& labels, const Tensor& tiles_in,
                          const Tensor& origins, c10::IntArrayRef keep_offset, c10::IntArrayRef tile_keep,
                          const std::optional<Tensor>& label_map) {
  const char* op = "stitch_tiles_argmax_";
  check_stitch_args(labels, 3, tiles_in, -1, keep_offset, tile_keep, op);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kByte, op, ": labels must be uint8, got ", labels.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(tiles_in.scalar_type()), op, ": tiles must be floating point, got ",
                   tiles_in.scalar_type());
  const int64_t K = tiles_in.size(1);
  Tensor lut;
  if (label_map.has_value() && label_map->defined()) {
    TORCH_CHECK_VALUE(label_map->dim() == 1 && label_map->size(0) == K, op, ": label_map must be (K,) = (", K,
                      ",), got ", label_map->sizes());
    lut = label_map->to(labels.device(), at::kByte).contiguous();
  } else {
    TORCH_CHECK_VALUE(K <= 256, op, ": without a label_map the class index must fit uint8, got K = ", K);
  }
  Tensor O = checked_origins(origins, tiles_in.size(0), labels.device(), op);
  Tensor tiles = tiles_in.contiguous();
  Tensor target = labels.is_contiguous() ? labels : labels.contiguous();
  const KeptGeometry g =
      kept_geometry(tiles, target.size(0), target.size(1), target.size(2), keep_offset, tile_keep, op);
  if (g.T > 0 && g.D > 0 && K > 0) kernels.stitch_argmax(target, tiles, O, lut, g);
  if (!target.is_same(labels)) labels.copy_(target);
}

}  // namespace impl

}  // namespace omkit
