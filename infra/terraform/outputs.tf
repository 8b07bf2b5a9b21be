output "bucket" {
  value = aws_s3_bucket.closedloop.id
}

output "kms_key_arn" {
  value = aws_kms_key.closedloop.arn
}

output "flows_policy_arn" {
  value = aws_iam_policy.flows.arn
}

output "serving_policy_arn" {
  value = aws_iam_policy.serving.arn
}
